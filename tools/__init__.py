"""Data-fetching and dataset-building tools of the repository (not part of the ``metasr`` package).

Run from the repository root, as the ``make`` targets do:

* ``python -m tools.samples skimage|synthetic|debian-photos DEST``: scikit-image's photos,
  generated images, or Debian's wallpaper photos cut into HR sub-images (:mod:`tools.photos`);
  ``make default-v1-model``, ``make photos``.
* ``python -m tools.climate_data DEST``: ETOPO5 relief and GloSea4 temperatures with a manifest;
  ``make climate-data`` (read back with :mod:`metasr.climate.sources`).
"""
