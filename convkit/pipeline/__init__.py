"""Files through filters: inputs found and planned, decoded, batched, filtered and written,
within a memory budget (:mod:`.batches`, sizes in :mod:`.memory`); huge images filtered in
tiles with their halo (:mod:`.tiling`), from file to file: huge PNGs band by band without
torch (:mod:`.streaming`), other huge files through the modules (:mod:`.huge_files`)."""
