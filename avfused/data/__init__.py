"""The data side: decode video files into model clips, crop faces, load the public benchmarks, cache
clips in shards, and generate the built-in synthetic benchmark.

A clip is ``video`` float32 (T, 3, H, W) in [0, 1] RGB and ``audio`` float32 (S,) mono 16 kHz in
[-1, 1]; batches add a leading B. See each module's docstring for details.
"""

from avfused.data.cache import CachedClipDataset, CacheReport, prepare_cache
from avfused.data.datasets import (
    DATASETS,
    ClipDataset,
    ClipRecord,
    collate_clips,
    dfdc_records,
    dftimit_records,
    fakeavceleb_records,
    lavdf_records,
    load_records,
    split_by_identity,
)
from avfused.data.decode import Clip, ClipSpec, MediaInfo, iter_windows, probe, read_clip
from avfused.data.encode import write_video
from avfused.data.faces import FaceCropper, FaceReport

__all__ = [
    "DATASETS",
    "CacheReport",
    "CachedClipDataset",
    "Clip",
    "ClipDataset",
    "ClipRecord",
    "ClipSpec",
    "FaceCropper",
    "FaceReport",
    "MediaInfo",
    "collate_clips",
    "dfdc_records",
    "dftimit_records",
    "fakeavceleb_records",
    "iter_windows",
    "lavdf_records",
    "load_records",
    "prepare_cache",
    "probe",
    "read_clip",
    "split_by_identity",
    "write_video",
]
