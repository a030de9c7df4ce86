"""The book's own Sphinx additions: the author-year references page and the course CSS."""

from __future__ import annotations

import importlib.util
import re

import pybtex.database
import yaml

from .helpers import ROOT


def _bibstyle():
    spec = importlib.util.spec_from_file_location("course_bibstyle", ROOT / "_ext" / "course_bibstyle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_uses_the_author_year_bibliography_and_the_css():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    sphinx = cfg["sphinx"]
    assert sphinx["local_extensions"] == {"course_bibstyle": "_ext"}
    assert sphinx["config"]["bibtex_reference_style"] == "author_year"
    assert sphinx["config"]["bibtex_default_style"] == "authoryear"
    assert "course.css" in sphinx["config"]["html_css_files"]
    css = (ROOT / "_static" / "course.css").read_text()
    assert re.search(r"div\.math mjx-container\s*\{[^}]*min-width:\s*0[^}]*overflow-x:\s*auto", css)


def test_every_reference_gets_a_unique_author_year_label():
    module = _bibstyle()
    bib = pybtex.database.parse_file(str(ROOT / "references.bib"))
    style = module.AuthorYearStyle()
    entries = style.sort(list(bib.entries.values()))
    labels = list(style.format_labels(entries))
    assert len(labels) == len(set(labels)) == len(bib.entries)
    for label in labels:
        assert re.fullmatch(r"[^\W\d][^,\\{}]*(?: and [^,\\{}]+| et al\.)?, \d{4}[a-z]?", label), label
    by_key = dict(zip([e.key for e in entries], labels, strict=True))
    assert by_key["bishop2006pattern"] == "Bishop, 2006"
    assert by_key["ho2020denoising"] == "Ho et al., 2020"
    assert by_key["kingma2014autoencoding"] == "Kingma and Welling, 2014"


def test_labels_disambiguate_and_decode_accents():
    module = _bibstyle()
    bib = pybtex.database.parse_string(r"""
    @article{a, author = {Capp{\'e}, Olivier}, title = {A}, year = {2009}}
    @article{b, author = {Capp{\'e}, Olivier}, title = {B}, year = {2009}}
    @article{c, author = {van den Oord, Aaron and Vinyals, Oriol}, title = {C}, year = {2017}}
    """, "bibtex")
    style = module.AuthorYearStyle()
    labels = list(style.format_labels(style.sort(list(bib.entries.values()))))
    assert sorted(labels) == ["Cappé, 2009a", "Cappé, 2009b", "van den Oord and Vinyals, 2017"]
