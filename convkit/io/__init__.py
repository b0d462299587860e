"""Files, without torch: images read and written with their metadata (:mod:`.images`),
PNGs streamed row by row for images too large for memory (:mod:`.pngstream`), and writes
that never leave a partial file (:mod:`.atomic`)."""
