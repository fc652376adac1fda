# The two commands a new user needs:  make book  and  make test.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= cpu
# Data: $ADVBOOK_DATA if set, else ../shared/data/cifar10-jpeg.tar.gz if it exists, else a download.
export PYTHONUNBUFFERED := 1

# MathJax, so that formulas render without a CDN: the npm package (checked against its registry
# integrity), kept in a cache outside the repository and copied into book/_static/mathjax, which
# git ignores. `npm pack` fetches it where npm is installed, else a plain download of the same file.
MATHJAX_VERSION   := 3.2.2
MATHJAX_INTEGRITY := sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==
NPM_CACHE         ?= $(HOME)/.cache/advbook/npm
MATHJAX_TGZ       := $(NPM_CACHE)/mathjax-$(MATHJAX_VERSION).tgz
MATHJAX_DIR       := book/_static/mathjax
MATHJAX_STAMP     := $(MATHJAX_DIR)/.version-$(MATHJAX_VERSION)

.PHONY: book html test notebooks bench clean clean-cache env mathjax

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

## mathjax: copy MathJax (tex-mml-chtml and what it loads) from the npm package into book/_static/mathjax
mathjax: $(MATHJAX_STAMP)

$(MATHJAX_TGZ):
	mkdir -p $(NPM_CACHE)
	if command -v npm >/dev/null 2>&1; then cd $(NPM_CACHE) && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null; \
	else $(PYTHON) -c 'import sys, urllib.request; urllib.request.urlretrieve(*sys.argv[1:])' \
	  https://registry.npmjs.org/mathjax/-/mathjax-$(MATHJAX_VERSION).tgz $@.part && mv $@.part $@; fi

$(MATHJAX_STAMP): $(MATHJAX_TGZ)
	$(PYTHON) -c 'import base64, hashlib, sys; got = "sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode(); sys.exit(None if got == sys.argv[2] else f"{sys.argv[1]}: integrity {got}, expected {sys.argv[2]}")' $< $(MATHJAX_INTEGRITY)
	rm -rf $(MATHJAX_DIR) && mkdir -p $(MATHJAX_DIR)
	tar -xzf $< -C $(MATHJAX_DIR) --strip-components=1 package/LICENSE
	tar -xzf $< -C $(MATHJAX_DIR) --strip-components=2 package/es5/tex-mml-chtml.js package/es5/input \
	  package/es5/output/chtml package/es5/output/chtml.js package/es5/ui package/es5/a11y package/es5/sre
	touch $@

## book: execute every notebook in $(PROFILE) and build the HTML book into _build/html
book: notebooks html

notebooks: env
	$(VENV)/bin/advbook run all --profile $(PROFILE)

## html: build the book from the executed notebooks already in book/executed/
html: env mathjax
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

## test: the test suite (unit tests, then every notebook in the smoke profile and a book build)
test: env mathjax
	$(PY) -m pytest -q

## bench: attack and evaluation-suite throughput against foolbox, ART and pyautoattack, same model and batch (writes book/bench_*.md)
bench: env
	$(PY) scripts/bench_attacks.py
	$(PY) scripts/bench_evaluate.py
	$(PY) scripts/bench_lec_whitebox.py
	$(PY) scripts/bench_lec_blackbox.py
	$(PY) scripts/bench_train.py --write $(BENCH_TRAIN_ARGS)

clean:
	rm -rf _build book/executed artifacts

clean-cache: env
	$(VENV)/bin/advbook cache clear
