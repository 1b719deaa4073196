import torch

from napari_llmseg import segment
from napari_llmseg.io.source import ImageSource
from napari_llmseg.training.data import cranium  # the head CT of Debian's invesalius-examples


class HounsfieldClasses(torch.nn.Module):
    """A stand-in for a trained network: 5 classes from Hounsfield units (0 = background)."""

    def forward(self, x):  # (B, 1, Z, Y, X) raw HU -> (B, 5, Z, Y, X) logits
        hu = x[:, 0]
        return torch.stack([
            torch.full_like(hu, -2.0),        # 0 background
            -((hu + 100) / 50) ** 2,          # 1 fat
            -((hu - 40) / 40) ** 2,           # 2 soft tissue
            -((hu - 400) / 150) ** 2,         # 3 cancellous bone
            (hu - 700) / 100,                 # 4 cortical bone
        ], dim=1)


ct, spacing, _, _ = cranium()  # (108, 256, 256) int16 HU, spacing (1.5, 0.957, 0.957) mm
image = ImageSource(ct, metadata={"scale": spacing, "units": ("mm",) * 3})
result = segment(
    image, ["bones", "soft tissue"], model=HounsfieldClasses().eval(),
    class_names={1: "fat", 2: "soft_tissue", 3: "bone_cancellous", 4: "bone_cortical"},
    roi_size=(64, 128, 128),
)
for prompt, found in result.metadata["prompt_classes"].items():
    print(prompt, "->", ", ".join(found["classes"]))
print("\n".join(result.summary()))
