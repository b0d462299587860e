"""Files, without torch: images read and written with their metadata (:mod:`.images`),
PNGs streamed row by row for images too large for memory (:mod:`.pngstream`), writes that
never leave a partial file (:mod:`.atomic`), files read whole and safely (:mod:`.files`) and
the format table (:mod:`.formats`)."""
