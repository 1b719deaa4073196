"""Screenshot of the HTML report of a real run on the nuclei sample, for docs/.

python scripts/screenshot_report.py [OUT.png]

Segments the bundled nuclei volume (with its voxel size, 0.29 x 0.26 x 0.26 um) into one id per
nucleus, writes the report beside the store, renders it with headless Chromium
(``apt-get install -y chromium``) and stores a palette PNG (``docs/images/report.png``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tifffile
from PIL import Image

from napari_llmseg import segment
from napari_llmseg.io.source import ImageSource

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    out = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT / "docs/images/report.png"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("needs Chromium: apt-get install -y chromium")
    volume = tifffile.imread(ROOT / "sample_data" / "nuclei.tif")
    meta = {"scale": [0.29, 0.26, 0.26], "units": ["um"] * 3}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the report shows the output as the user named it: nuclei.zarr
        source = ImageSource(volume, name="sample_data/nuclei.tif", metadata=meta)
        result = segment(source, ["nuclei", "giraffe"], out="nuclei.zarr", instances=True,
                         split=True, min_size="20 um^3")  # fmt: skip
        report = Path(tmp) / "nuclei_report.html"
        assert report.exists(), result.files
        shot = Path(tmp) / "shot.png"
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--screenshot={shot}", "--window-size=1000,2280", report.as_uri()],
            check=True, capture_output=True,
        )  # fmt: skip
        image = Image.open(shot).convert("RGB")
    out.parent.mkdir(parents=True, exist_ok=True)
    # 256 colours keep every label colour and the text crisp at a quarter of the RGB size
    image.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
        out, optimize=True
    )
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
