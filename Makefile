# `make demo`: set up, generate the synthetic demo data (96 videos x 60 frames), train MTANet, evaluate, export,
# then run the trained model on one demo video (`affectkit predict`: CSV, plots, overlay).
# `make test`: set up and run the default test suite (long tests: `make test-slow`).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := demo

.PHONY: setup demo test test-slow test-weights bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

demo: setup
	$(VENV)/bin/affectkit demo-data --out $(DEMO)/data --edition abaw3
	$(VENV)/bin/affectkit train zhang2020_mtanet --data $(DEMO)/data --preset cpu_demo --out $(DEMO)/zhang2020_mtanet
	$(VENV)/bin/affectkit predict --model $(DEMO)/zhang2020_mtanet --input $(DEMO)/data/videos/demo_val_000.mp4 --out $(DEMO)/predictions --plots --overlay

test: setup
	$(PY) -m pytest -m "not slow" -q

test-slow: setup
	$(PY) -m pytest -m slow -q

# Weight conversion checked against torchvision itself: needs the bench extra (torch,
# torchvision, timm; several GB), which CI does not install (those tests skip there).
test-weights: setup
	$(PY) -m pip install -q -e .[bench]
	$(PY) -m pytest -q tests/test_weight_conversion.py

clean:
	rm -rf $(DEMO)
