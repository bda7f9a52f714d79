"""MkDocs hook: the toy model's card is written once, beside the weights it describes
(``magicremover/assets/toy/README.md``, shipped in the wheel); its page on the site is that file, with the figure
links it makes relative to its own folder pointed at the site's ``figures/``."""

from pathlib import Path

CARD = Path(__file__).resolve().parents[1] / "magicremover" / "assets" / "toy" / "README.md"


def on_page_markdown(markdown: str, page, **_) -> str:
    if page.file.src_uri != "model-card.md":
        return markdown
    return CARD.read_text().replace("](../../../notebooks/figures/", "](figures/")
