"""Files in and out: image reading and writing with metadata, atomic writes, which files a run reads,
where each output goes, output sizes and formats. No torch here."""
