"""Write the InVesalius example head CT as a NIfTI file, for the radiology tutorial.

    python scripts/make_head_ct.py head-ct.nii.gz [--masks]

The CT comes from the Debian package invesalius-examples (GPL-2; `apt-get install
invesalius-examples`), read in place: it is never copied into this repository. The volume is
written in Hounsfield units (int16) with its true voxel spacing; with --masks, InVesalius' own
bone and soft-tissue masks are written beside it (FILE-bone.nii.gz, FILE-soft-tissue.nii.gz)
to compare a segmentation with.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from napari_llmseg.training.data import cranium


def save(path: Path, volume: np.ndarray, spacing_zyx: tuple[float, float, float]) -> None:
    """(Z, Y, X) array -> NIfTI voxel axes (i, j, k) = (X, Y, Z), axis-aligned affine in mm."""
    affine = np.diag([*reversed(spacing_zyx), 1.0])
    image = nib.Nifti1Image(np.ascontiguousarray(volume.transpose()), affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="output .nii.gz file")
    parser.add_argument("--masks", action="store_true", help="also write the reference masks")
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; remove it first")
    ct, spacing, bone, tissue_and_bone = cranium()
    save(args.out, ct, spacing)
    print(f"wrote {args.out}: {ct.shape} voxels (Z, Y, X), spacing {spacing} mm")
    if args.masks:
        stem = str(args.out).removesuffix(".nii.gz").removesuffix(".nii")
        save(Path(f"{stem}-bone.nii.gz"), bone.astype(np.uint8), spacing)
        save(
            Path(f"{stem}-soft-tissue.nii.gz"), (tissue_and_bone & ~bone).astype(np.uint8), spacing
        )
        print(f"wrote {stem}-bone.nii.gz and {stem}-soft-tissue.nii.gz")


if __name__ == "__main__":
    main()
