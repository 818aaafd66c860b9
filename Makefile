# Set-up and everyday commands. `make test` is what CI runs (.ci/run); `make demo` is the main job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
EXTRAS ?= dev,train,climate,export,web

.PHONY: venv test test-deps lint bench demo default-model default-v1-model photo-model photos climate-data t2m-model t2m-v1-model clean

# metasr and its core dependencies only: all `make demo` needs.
$(VENV)/.core: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet setuptools wheel
	$(PIP) install --quiet -e .
	touch $@

# BasicSR 1.4.2 ships only as a source package whose build imports torch, so it is built
# against the venv's torch (--no-build-isolation) after torch is installed.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet setuptools wheel
	$(PIP) install --quiet -e ".[dev]"
	$(PIP) install --quiet --no-build-isolation basicsr==1.4.2
	$(PIP) install --quiet -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

# Debian packages some tests need, installed when missing (as root, with apt-get); without them
# those tests skip and say why: udunits2 for cfchecks (tests/climate/test_cf.py); chromium and
# chromium-driver for the browser test of `metasr serve` (tests/cli/test_serve.py). ninja-build
# for torch's extension builder (tests/ops/test_fused_cpu.py compiles the opt-in CPU kernel with
# g++; it skips without g++ and fails if the build does).
test-deps:
	@command -v ninja >/dev/null || apt-get install -y -q ninja-build >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q ninja-build >/dev/null 2>&1; } \
		|| echo "ninja-build not installed: tests/ops/test_fused_cpu.py will fail"
	@dpkg -s libudunits2-0 >/dev/null 2>&1 || apt-get install -y -q libudunits2-0 >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libudunits2-0 >/dev/null 2>&1; } \
		|| echo "libudunits2-0 not installed: the cfchecks tests will skip"
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null; } || \
		echo "make: could not install chromium; the browser test will skip"; \
	else echo "make: chromium is missing and cannot be installed here; the browser test will skip"; fi

test: venv test-deps
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks scripts tools
	$(VENV)/bin/ruff format --check src tests benchmarks scripts tools

bench: venv
	$(VENV)/bin/metasr bench --config div2k-x4,seed-t2m,train-b16

demo: $(VENV)/.core
	$(VENV)/bin/metasr demo --out demo_out

# The first default model (default-v1) from scratch (CPU, ~30-60 min on 2 cores), exported into
# the package as default_v1.safetensors, with its PSNR against bicubic on the held-out photos.
DEFAULT_V1_OPT := options/train/MetaEDSR_tiny_default.yml
default-v1-model: venv
	$(PY) -m tools.samples skimage datasets/skimage
	$(VENV)/bin/metasr train -opt $(DEFAULT_V1_OPT)
	$(PY) scripts/export_default_model.py --opt $(DEFAULT_V1_OPT) \
		--checkpoint experiments/MetaEDSR_tiny_default/models/net_g_latest.pth \
		-o src/metasr/weights/default_v1.safetensors
	$(PY) scripts/eval_default_model.py --model default-v1

# The bundled default model from scratch: the photo model's six stages (below), exported into
# the package as default.safetensors (about 4 hours on 2 CPU cores, docs/benchmarks.md).
default-model: photo-model
	cp experiments/$(PHOTO_NAME)/$(PHOTO_NAME).safetensors src/metasr/weights/default.safetensors

# The photo model of issue 13 from scratch, in six stages (docs/training.md, "Shipped option
# files"; times in docs/benchmarks.md): stage 1 (options/train/MetaEDSR_photo_default.yml,
# 1500 iterations), stage 2 (..._stage2.yml, 5000 more, warm restart), stage 3 (..._stage3.yml,
# 14000 at batch 16 on larger patches, bfloat16 forward, EMA), stage 4 (..._stage4.yml, a
# float32 finish), stage 5 (..._stage5.yml, 5000 with the bicubic residual at the request's
# scale) and stage 6 (..._stage6.yml, a float32 finish), exported next to its run and scored against bicubic and the bundled default
# on the held-out whole photos. Interrupted? Run it again: each stage continues from its last
# state (--auto_resume).
PHOTO_OPTS := $(addprefix options/train/MetaEDSR_photo_default,.yml _stage2.yml _stage3.yml _stage4.yml _stage5.yml _stage6.yml)
PHOTO_LAST := $(lastword $(PHOTO_OPTS))
PHOTO_NAME := $(basename $(notdir $(PHOTO_LAST)))
photo-model: venv
	test -d datasets/photos/train || $(MAKE) photos
	for opt in $(PHOTO_OPTS); do $(VENV)/bin/metasr train -opt $$opt --auto_resume || exit 1; done
	$(PY) scripts/export_default_model.py --opt $(PHOTO_LAST) \
		--checkpoint experiments/$(PHOTO_NAME)/models/net_g_latest.pth \
		-o experiments/$(PHOTO_NAME)/$(PHOTO_NAME).safetensors
	$(PY) scripts/eval_default_model.py --data datasets/photos/val --ssim \
		--model experiments/$(PHOTO_NAME)/$(PHOTO_NAME).safetensors --baseline default-v1

# Training photos from Debian's wallpaper packages (apt-get download + dpkg -x, nothing
# installed; run apt-get update first) and scikit-image: HR sub-images in datasets/photos/train,
# whole held-out photos in datasets/photos/val, manifest.json with package, version, licence.
photos: venv
	$(PY) -m tools.samples debian-photos datasets/photos

# Real climate data into datasets/climate (gitignored): ETOPO5 relief from Debian's
# ferret-datasets (apt-get download + dpkg -x, nothing installed; run apt-get update first) and
# the GloSea4 N96 surface-temperature PP files from the iris-sample-data wheel (pip download
# --no-deps, unzipped; iris is not installed). manifest.json records versions, licences, hashes.
climate-data: venv
	$(PY) -m tools.climate_data datasets/climate

# Real fields onto ERA5's 721x1440 grid (issue 12, part 10): a GloSea4 temperature field of a
# member held out of the t2m model's training (N96 -> ERA5, by --model t2m and by bicubic and
# conservative regridding) and the ETOPO5 relief coarsened to 96x144 (by the baselines, and by
# RELIEF_MODEL=checkpoint when given); netCDF files and comparison PNGs in demo_out/climate/.
.PHONY: climate-demo
T2M_MODEL ?= t2m
RELIEF_MODEL ?=
climate-demo: venv
	test -f datasets/climate/etopo5.cdf -a -d datasets/climate/glosea4 || $(MAKE) climate-data
	$(PY) scripts/climate_demo.py --data datasets/climate --out demo_out/climate \
		--model $(T2M_MODEL) $(if $(RELIEF_MODEL),--relief-model $(RELIEF_MODEL))

# The temperature model of issue 23 (docs/climate.md, "A model that transfers"): fetch the data
# if missing, train options/climate/MetaEDSR_t2m_v2.yml (scripts/t2m_model.py train: its own
# resumable loop, state in experiments/MetaEDSR_t2m_v2/state.pt; interrupted or stopped by
# T2M_MINUTES? run it again and it continues), export it with its model card as the bundled
# src/metasr/weights/t2m.safetensors, and write the held-out table (model / t2m-v1 / bicubic /
# bicubic-conservative / conservative) and the error maps of the cells it loses next to the
# run. The first model stays loadable as t2m-v1 (make t2m-v1-model).
T2M_OPT := options/climate/MetaEDSR_t2m_v2.yml
T2M_DIR := experiments/MetaEDSR_t2m_v2
T2M_MINUTES ?=
t2m-model: venv
	test -d datasets/climate/other || $(MAKE) climate-data
	OMP_NUM_THREADS=1 $(PY) scripts/t2m_model.py train --opt $(T2M_OPT) --data datasets/climate \
		--out experiments $(if $(T2M_MINUTES),--minutes $(T2M_MINUTES))
	$(PY) scripts/t2m_model.py export-v2 --opt $(T2M_OPT) --checkpoint $(T2M_DIR)/state.pt \
		--data datasets/climate -o src/metasr/weights/t2m.safetensors
	$(PY) scripts/t2m_table.py --data datasets/climate --model t2m=t2m --model t2m-v1=t2m-v1 \
		--variants --json $(T2M_DIR)/table.json --markdown $(T2M_DIR)/table.md
	$(PY) scripts/t2m_maps.py --data datasets/climate --model t2m=t2m -o $(T2M_DIR)/maps

# The first temperature model, t2m-v1 (issue 12, part 9): options/train/MetaEDSR_t2m.yml on 10
# GloSea4 members through BasicSR (CPU, 1 thread: the shipped run took 49 min on a 2-core
# machine shared with four other jobs), exported with its statistics and scored on the 3
# held-out members against the regridding baselines.
T2M_V1_OPT := options/train/MetaEDSR_t2m.yml
T2M_V1_DIR := experiments/MetaEDSR_t2m
T2M_SCALES := 2,4,2x3,7.5104x10
t2m-v1-model: venv
	test -d datasets/climate/glosea4 || $(MAKE) climate-data
	$(VENV)/bin/metasr train -opt $(T2M_V1_OPT)
	$(PY) scripts/t2m_model.py export --opt $(T2M_V1_OPT) \
		--checkpoint $(T2M_V1_DIR)/models/net_g_latest.pth -o src/metasr/weights/t2m_v1.safetensors
	$(PY) scripts/t2m_model.py heldout --opt $(T2M_V1_OPT) -o $(T2M_V1_DIR)/heldout.nc
	$(VENV)/bin/metasr eval --data $(T2M_V1_DIR)/heldout.nc --var surface_temperature --model t2m-v1 \
		--scales $(T2M_SCALES) --baselines nearest,bilinear,bicubic,conservative \
		--json $(T2M_V1_DIR)/heldout_scores.json

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
