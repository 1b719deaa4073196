"""What each band of a multispectral raster shows, and whether a band selection is true colour.

The models napari-llmseg ships and wraps were trained on true-colour (red, green, blue) images.
``--bands 4,3,2`` is true colour on Landsat 8/9 but a false-colour infrared composite on
Landsat 5/7, where band 4 is near-infrared: the model then runs without complaint on an image
unlike anything it was trained on. :func:`band_colours` finds what each band is from the
evidence a raster carries, strongest first, and says nothing about a band without evidence:

1. a central wavelength: GDAL's ``CENTRAL_WAVELENGTH_UM`` (``IMAGERY`` metadata domain,
   GDAL >= 3.10), or a band ``wavelength`` item (ENVI, GDAL's Sentinel-2 driver) with its
   units (``wavelength_units``/``WAVELENGTH_UNIT``; without units, values above 30 are nm);
2. a GDAL colour interpretation beyond RGB (GDAL >= 3.10: ``nir``, ``swir``, ``rededge``,
   ``coastal``, ``pan``, thermal bands). Red, green and blue interpretations are not used:
   GDAL gives them to the first three bands of every ``PHOTOMETRIC=RGB`` TIFF, whatever they
   hold;
3. the band description, by word: ``red``, ``green``, ``blue``, ``nir``/``near infrared``,
   ``swir``, ``red edge``, ``coastal``, ``pan``, ``thermal``...;
4. the sensor's band numbering, when the file name (or its folder's, or a dataset metadata
   item such as ``SPACECRAFT_ID``) identifies the sensor: a Landsat product ID (``LC09_``,
   ``LE07_``, ``LT05_``, also pre-collection ``LE7...`` scene IDs), ``landsat7``/``landsat_8``,
   or a Sentinel-2 product or granule name (``S2A_``, ``T33UUP_..._B04``). The band number
   comes from a band name in the description (``SR_B4``, ``B04``), from the file name of a
   one-band file (``..._SR_B4.TIF``, ``..._B04_10m.jp2``), or, in a multiband file, from the
   band's position when the band count is that of the sensor's usual full stack (6 or 7 for
   TM/ETM+: bands 1-5, 7 or 1-7; 7 or 11 for OLI; 12 or 13 for Sentinel-2 MSI, in band order).

Sensor band tables: Landsat 4/5 TM and 7 ETM+ (USGS): 1 blue, 2 green, 3 red, 4 NIR,
5 SWIR 1, 6 thermal, 7 SWIR 2, 8 panchromatic (ETM+). Landsat 8/9 OLI/TIRS: 1 coastal/aerosol,
2 blue, 3 green, 4 red, 5 NIR, 6 SWIR 1, 7 SWIR 2, 8 panchromatic, 9 cirrus, 10-11 thermal.
Sentinel-2 MSI (ESA): B01 coastal aerosol, B02 blue, B03 green, B04 red, B05-B07 red edge,
B08 NIR, B8A narrow NIR, B09 water vapour, B10 SWIR cirrus, B11-B12 SWIR.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: What a true-colour model expects, in order.
TRUE_COLOUR = ("red", "green", "blue")
SWIR = "short-wave infrared"

_TM = {1: "blue", 2: "green", 3: "red", 4: "near-infrared", 5: "short-wave infrared",
       6: "thermal infrared", 7: "short-wave infrared"}  # fmt: skip
_ETM = {**_TM, 8: "panchromatic"}
_OLI = {1: "coastal aerosol", 2: "blue", 3: "green", 4: "red", 5: "near-infrared",
        6: "short-wave infrared", 7: "short-wave infrared", 8: "panchromatic", 9: "cirrus",
        10: "thermal infrared", 11: "thermal infrared"}  # fmt: skip
_MSI = {"1": "coastal aerosol", "2": "blue", "3": "green", "4": "red", "5": "red edge",
        "6": "red edge", "7": "red edge", "8": "near-infrared", "8A": "near-infrared",
        "9": "water vapour", "10": "cirrus", "11": "short-wave infrared",
        "12": "short-wave infrared"}  # fmt: skip


@dataclass(frozen=True)
class Sensor:
    """A sensor's band numbering: ``bands`` maps band names ("4", "8A") to what they show;
    ``stacks`` maps the band count of a usual full multiband stack to its bands in order."""

    bands: Mapping[str, str]
    stacks: Mapping[int, tuple[str, ...]]
    esa_names: bool = False  # bands are called B02, B8A (Sentinel-2) rather than band 2

    def band_label(self, name: str) -> str:
        if not self.esa_names:
            return f"band {name}"
        return f"B{name}" if name == "8A" else f"B{int(name):02d}"


def _numbered(table: Mapping[int, str]) -> dict[str, str]:
    return {str(k): v for k, v in table.items()}


_TM_STACKS = {6: ("1", "2", "3", "4", "5", "7"), 7: ("1", "2", "3", "4", "5", "6", "7")}
SENSORS = {
    "TM": Sensor(_numbered(_TM), _TM_STACKS),
    "ETM": Sensor(_numbered(_ETM), _TM_STACKS),
    "OLI": Sensor(
        _numbered(_OLI),
        {7: tuple("1234567"), 11: tuple(str(i) for i in range(1, 12))},
    ),
    "MSI": Sensor(
        _MSI,
        {
            13: ("1", "2", "3", "4", "5", "6", "7", "8", "8A", "9", "10", "11", "12"),
            12: ("1", "2", "3", "4", "5", "6", "7", "8", "8A", "9", "11", "12"),
        },
        esa_names=True,
    ),
}

# Product and scene IDs (USGS, ESA), and plain "landsat 7"/"sentinel-2" in names or metadata.
_LANDSAT_ID = re.compile(r"(?<![A-Z0-9])L([COTE])0?([4-9])(?:_|\d{13})", re.IGNORECASE)
_LANDSAT_WORD = re.compile(r"landsat[ _-]?0?([4-9])(?!\d)", re.IGNORECASE)
_SENTINEL2 = re.compile(
    r"(?<![A-Z0-9])S2[ABCD]_|sentinel[ _-]?2|(?<![A-Z0-9])T\d{2}[A-Z]{3}_\d{8}T\d{6}_B",
    re.IGNORECASE,
)
#: Dataset metadata items that may name the platform or sensor.
_PLATFORM_KEYS = ("SPACECRAFT_ID", "SPACECRAFT_NAME", "SPACECRAFT", "SATELLITE", "SATELLITEID",
                  "PLATFORM", "MISSION", "SENSOR", "SENSOR_ID")  # fmt: skip
#: A band name: SR_B4, B4, B04, B8A (at a word boundary, as in file names and descriptions).
_BAND_NAME = re.compile(r"(?:^|[_.\s-])(?:SR_|ST_|TOA_)?B(0?\d{1,2}|8A)(?=$|[_.\s-])", re.I)


def identify_sensor(
    names: Sequence[str], tags: Mapping[str, str] | None = None
) -> tuple[str, str] | None:
    """``(key into SENSORS, display name)`` of the sensor that ``names`` (file and folder names)
    or ``tags`` (dataset metadata) identify, or None. Landsat MSS is not identified."""
    texts = [str(n) for n in names]
    for key, value in (tags or {}).items():
        if str(key).upper() in _PLATFORM_KEYS:
            texts.append(str(value))
    for text in texts:
        m = _LANDSAT_ID.search(text)
        if m:
            letter, n = m.group(1).upper(), int(m.group(2))
            if n >= 8 and letter in "CO":
                return "OLI", f"Landsat {n} OLI"
            if n == 7 and letter == "E":
                return "ETM", "Landsat 7 ETM+"
            if n in (4, 5) and letter == "T":
                return "TM", f"Landsat {n} TM"
        m = _LANDSAT_WORD.search(text)
        if m:
            n = int(m.group(1))
            if n >= 8:
                return "OLI", f"Landsat {n} OLI"
            if n == 7:
                return "ETM", "Landsat 7 ETM+"
            if n in (4, 5):
                return "TM", f"Landsat {n} TM"
        if _SENTINEL2.search(text):
            return "MSI", "Sentinel-2 MSI"
    return None


def band_name_in(text: str | None) -> str | None:
    """The band name in a file name or description: ``"LC08_..._SR_B4"`` -> ``"4"``,
    ``"T33UUP_..._B04_10m"`` -> ``"4"``, ``"B8A"`` -> ``"8A"``; None unless exactly one."""
    if not text:
        return None
    hits = _BAND_NAME.findall(str(text))
    if len(hits) != 1:
        return None
    name = hits[0].upper()
    return name if name == "8A" else str(int(name))


# --- evidence -----------------------------------------------------------------------------
def colour_of_wavelength(nm: float) -> str:
    """Name of the spectral region around a central wavelength in nanometres."""
    for upper, name in (
        (450, "coastal aerosol"),
        (515, "blue"),
        (600, "green"),
        (690, "red"),
        (750, "red edge"),
        (1300, "near-infrared"),
        (3000, "short-wave infrared"),
        (8000, "mid-wave infrared"),
    ):
        if nm < upper:
            return name
    return "thermal infrared"


_UNITS_NM = {"nm": 1.0, "nanometers": 1.0, "nanometres": 1.0, "nanometer": 1.0,
             "um": 1000.0, "µm": 1000.0, "micrometers": 1000.0, "micrometres": 1000.0,
             "micrometer": 1000.0, "micron": 1000.0, "microns": 1000.0}  # fmt: skip


def wavelength_nm(
    band_tags: Mapping[str, str], imagery: Mapping[str, str], dataset_tags: Mapping[str, str]
) -> float | None:
    """The band's central wavelength in nm from its metadata, or None."""
    if "CENTRAL_WAVELENGTH_UM" in imagery:
        try:
            return float(imagery["CENTRAL_WAVELENGTH_UM"]) * 1000.0
        except ValueError:
            return None
    upper = {str(k).upper(): str(v) for k, v in band_tags.items()}
    text = upper.get("WAVELENGTH") or upper.get("CENTRAL_WAVELENGTH")
    if text is None:
        return None
    try:
        value = float(text.split()[0])
    except (ValueError, IndexError):
        return None
    dataset = {str(k).upper(): str(v) for k, v in dataset_tags.items()}
    unit = (
        upper.get("WAVELENGTH_UNIT") or upper.get("WAVELENGTH_UNITS")
        or dataset.get("WAVELENGTH_UNITS") or dataset.get("WAVELENGTH_UNIT") or ""
    ).strip().lower()  # fmt: skip
    factor = _UNITS_NM.get(unit)
    if factor is None:
        if unit:
            return None  # units we do not know: no guess
        factor = 1.0 if value > 30 else 1000.0
    return value * factor


#: GDAL >= 3.10 colour interpretations that say what a band is (red/green/blue do not: every
#: PHOTOMETRIC=RGB TIFF gets them).
_COLORINTERP = {"pan": "panchromatic", "coastal": "coastal aerosol", "rededge": "red edge",
                "nir": "near-infrared", "swir": "short-wave infrared",
                "mwir": "mid-wave infrared", "lwir": "thermal infrared",
                "tir": "thermal infrared", "other_ir": "infrared"}  # fmt: skip

#: Description words and phrases, most specific first ("red edge" before "red", "near
#: infrared" before "red").
_WORDS = (
    (("near infrared", "near-infrared", "nir", "vnir"), "near-infrared"),
    (("short wave infrared", "shortwave infrared", "swir", "swir1", "swir2"), SWIR),
    (("thermal", "tir", "tirs", "lwir", "brightness temperature"), "thermal infrared"),
    (("red edge", "red-edge", "rededge", "vre"), "red edge"),
    (("coastal", "aerosol", "ultra blue", "ultrablue"), "coastal aerosol"),
    (("panchromatic", "pan"), "panchromatic"),
    (("cirrus",), "cirrus"),
    (("water vapour", "water vapor"), "water vapour"),
    (("red",), "red"),
    (("green",), "green"),
    (("blue",), "blue"),
)


def colour_of_description(description: str | None) -> str | None:
    """What a band description says the band is ("Band 4 - NIR" -> "near-infrared")."""
    if not description:
        return None
    text = " " + re.sub(r"[^a-z0-9]+", " ", description.lower().replace("-", " ")) + " "
    for phrases, colour in _WORDS:
        for phrase in phrases:
            if f" {phrase.replace('-', ' ')} " in text:
                return colour
    return None


@dataclass(frozen=True)
class BandInfo:
    """What GDAL reports about one band, as :func:`band_colours` needs it."""

    description: str | None = None
    colorinterp: str | None = None
    tags: Mapping[str, str] | None = None
    imagery: Mapping[str, str] | None = None
    position: int = 1  # 1-based, in its file
    file: str = ""  # the file it is in
    file_count: int = 1  # bands in that file


def band_colours(
    bands: Sequence[BandInfo], *, dataset_tags: Mapping[str, str] | None = None
) -> tuple[list[str | None], list[str | None], str | None]:
    """What each band shows -> (colours, evidence, sensor name).

    ``colours[i]`` is "red", "near-infrared"... or None without evidence; ``evidence[i]`` says
    where that came from ("its description 'nir'", "Landsat 7 ETM+ band 4"...).
    """
    dataset_tags = dict(dataset_tags or {})
    colours: list[str | None] = []
    evidence: list[str | None] = []
    sensor_name = None
    for band in bands:
        path = Path(band.file)
        found = identify_sensor([path.name, path.parent.name], dataset_tags)
        sensor = SENSORS[found[0]] if found else None
        if found:
            sensor_name = found[1]
        colour, why = _one_band(band, dataset_tags, sensor, found[1] if found else "")
        colours.append(colour)
        evidence.append(why)
    return colours, evidence, sensor_name


def _one_band(
    band: BandInfo, dataset_tags: Mapping[str, str], sensor: Sensor | None, sensor_name: str
) -> tuple[str | None, str | None]:
    nm = wavelength_nm(band.tags or {}, band.imagery or {}, dataset_tags)
    if nm is not None:
        return colour_of_wavelength(nm), f"central wavelength {nm:g} nm"
    if band.colorinterp in _COLORINTERP:
        return _COLORINTERP[band.colorinterp], f"GDAL colour interpretation '{band.colorinterp}'"
    said = colour_of_description(band.description)
    if said is not None:
        return said, f"description {band.description!r}"
    if sensor is None:
        return None, None
    name = band_name_in(band.description)
    if name is None and band.file_count == 1:
        name = band_name_in(Path(band.file).stem)
    if name is None:
        stack = sensor.stacks.get(band.file_count)
        if stack is not None and 1 <= band.position <= len(stack):
            name = stack[band.position - 1]
    if name is None or name not in sensor.bands:
        return None, None
    return sensor.bands[name], f"{sensor_name} {sensor.band_label(name)}"


def rgb_positions(colours: Sequence[str | None]) -> list[int] | None:
    """1-based positions of the red, green and blue bands among ``colours``, when each
    appears exactly once."""
    out = []
    for c in TRUE_COLOUR:
        hits = [i for i, v in enumerate(colours, 1) if v == c]
        if len(hits) != 1:
            return None
        out.append(hits[0])
    return out


def true_colour_warning(metadata: Mapping[str, Any], model: str) -> str | None:
    """A warning when three bands given to a true-colour ``model`` are known not to be red,
    green, blue in that order; None when they are, or when nothing is known about them."""
    colours = metadata.get("band_colours")
    if not colours or len(colours) != 3:
        return None
    if not any(c is not None and c != e for c, e in zip(colours, TRUE_COLOUR, strict=True)):
        return None
    evidence = metadata.get("band_evidence") or [None] * 3
    shown = ", ".join(
        f"{c} ({e})" if c is not None else "unknown"
        for c, e in zip(colours, evidence, strict=True)
    )
    what = metadata.get("band_selection") or "the three bands"
    hint = metadata.get("rgb_hint")
    advice = f"; for true colour use {hint}" if hint else ""
    return (
        f"{what} are {shown}, but {model} expects true colour (red, green, blue), the kind of "
        f"image it was trained on: its results on other bands are untested{advice}"
    )
