"""Evaluation protocols users can trust: robust FakeAVCeleb metadata, deterministic splits, the silence cue.

read_fakeavceleb_metadata(csv)  -> MetadataTable (records + a report of every row fixed or dropped)
make_splits(records, protocol, seed, ...) -> SplitFile (JSON with a content hash)
records_named(records, names, split_path) -> the records a split file's fold names
leading_silence_seconds(wave, sample_rate) / remove_silence_cue(wave, ...)
"""

from avfused.data.fakeavceleb import (
    FAKEAVCELEB_TYPES,
    MetadataTable,
    read_fakeavceleb_metadata,
    resolve_duplicates,
    type_code,
)
from avfused.protocols.silence import leading_silence_seconds, remove_silence_cue, silence_scores
from avfused.protocols.splits import PROTOCOLS, SplitFile, load_split, make_splits, records_named

__all__ = [
    "FAKEAVCELEB_TYPES",
    "MetadataTable",
    "PROTOCOLS",
    "SplitFile",
    "leading_silence_seconds",
    "load_split",
    "make_splits",
    "read_fakeavceleb_metadata",
    "records_named",
    "remove_silence_cue",
    "resolve_duplicates",
    "silence_scores",
    "type_code",
]
