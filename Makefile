# The two commands a new user needs:  make book  and  make test.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= cpu
# Data: $ADVBOOK_DATA if set, else ../shared/data/cifar10-jpeg.tar.gz if it exists, else a download.
export PYTHONUNBUFFERED := 1

.PHONY: book html test notebooks bench clean clean-cache env

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

## book: execute every notebook in $(PROFILE) and build the HTML book into _build/html
book: notebooks html

notebooks: env
	$(VENV)/bin/advbook run all --profile $(PROFILE)

## html: build the book from the executed notebooks already in book/executed/
html: env
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

## test: the test suite (unit tests, then every notebook in the smoke profile and a book build)
test: env
	$(PY) -m pytest -q

## bench: attack and evaluation-suite throughput against foolbox, same model and batch (writes book/bench_*.md)
bench: env
	$(PY) scripts/bench_attacks.py
	$(PY) scripts/bench_evaluate.py

clean:
	rm -rf _build book/executed artifacts

clean-cache: env
	$(VENV)/bin/advbook cache clear
