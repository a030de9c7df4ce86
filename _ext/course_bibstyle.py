"""Sphinx extension of the book: an author-year bibliography that matches the author-year citations.

The text cites with sphinxcontrib-bibtex's ``author_year`` style ("Ho et al., 2020"), but pybtex's
built-in formatting styles label the entries of the references page [1], [2], ... This registers a
pybtex style ``authoryear``: entries sorted by author, year and title (as ``plain``), each labelled
the way the text cites it, with a, b, ... added where two entries would share a label.
"""

from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle


def _surname(person) -> str:
    parts = list(person.rich_prelast_names) + list(person.rich_last_names)  # "van den" + "Oord"
    return " ".join(part.render_as("text") for part in parts)  # LaTeX accents decoded: Capp{\'e} -> Cappé


class AuthorYearLabelStyle(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        labels = [self.format_label(entry) for entry in sorted_entries]
        count, seen = Counter(labels), Counter()
        for label in labels:
            if count[label] == 1:
                yield label
            else:  # "Kingma and Welling, 2014a", "... 2014b"
                yield label + chr(ord("a") + seen[label])
                seen[label] += 1

    def format_label(self, entry) -> str:
        people = entry.persons.get("author") or entry.persons.get("editor") or []
        if not people:
            names = entry.fields.get("organization") or entry.fields.get("title", entry.key)
        elif len(people) == 1:
            names = _surname(people[0])
        elif len(people) == 2:
            names = f"{_surname(people[0])} and {_surname(people[1])}"
        else:
            names = f"{_surname(people[0])} et al."
        year = entry.fields.get("year")
        return f"{names}, {year}" if year else names


class AuthorYearStyle(PlainStyle):
    default_label_style = AuthorYearLabelStyle


def setup(app):
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
