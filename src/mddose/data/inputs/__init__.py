"""Model inputs: patients → the arrays a model trains on and predicts from, and back.

* :mod:`~mddose.data.inputs.common` — what both representations share (config (de)serialisation,
  channel names, the left/right channel permutation, number checks);
* :mod:`~mddose.data.inputs.slices` — 2D axial slices (the diffusion models) and their inverse;
* :mod:`~mddose.data.inputs.slice_cache` — the on-disk cache of slices, assembled into a dataset;
* :mod:`~mddose.data.inputs.slice_dataset` — :class:`SliceDataset` (a torch ``Dataset``) over that cache;
* :mod:`~mddose.data.inputs.volume` — whole 3D volumes (the regression baselines), :class:`VolumeDataset`;
* :mod:`~mddose.data.inputs.volume_crop` — the full-resolution 3D geometry (``grid: "crop"``): the
  possible-dose box at the original voxel size, :class:`CropPatchDataset` of training patches, whole-crop
  prediction;
* :mod:`~mddose.data.inputs.resample` — the per-axis volume resampling those use;
* :mod:`~mddose.data.inputs.volume_augment` — C3D's 3D augmentation and test-time augmentation.
"""
