"""The novel's PDF (step 1c): its lines with their positions, page by page, for
cleaning.novel_paragraphs, which tells running headers and page numbers from prose."""
from chateau.cleaning import PdfLine, PdfPage
from chateau.cli import StageError


def check_pdf(pdf_path):
    """The file must be what it claims: a PDF (its header), complete (its end-of-file marker: a
    download cut short has none). A blocked download often saves a web page under the PDF's name."""
    data = open(pdf_path, "rb").read()
    if not data.startswith(b"%PDF-"):
        start = data[:40].decode("utf-8", "replace").split("\n")[0].strip() or "nothing"
        raise StageError(f"{pdf_path} is not a PDF (it starts with {start!r}: a web page or an error saved under the "
                         f"PDF's name?): download the novel again or put the real PDF there")
    if b"%%EOF" not in data[-2048:]:
        raise StageError(f"{pdf_path} is truncated (no end-of-file marker: the download was cut short): download it again")


def read_pdf_pages(pdf_path):
    """[PdfPage(height, [PdfLine, ...]), ...], lines sorted top to bottom, then left to right."""
    import pymupdf
    check_pdf(pdf_path)
    try:
        doc = pymupdf.open(pdf_path)
    except Exception as error:  # pymupdf raises several types for empty or corrupt files
        raise StageError(f"{pdf_path} is not a readable PDF ({error}): download it again") from None
    if doc.needs_pass:
        raise StageError(f"{pdf_path} is encrypted (it needs a password): save an unprotected copy of it there")
    pages = []
    for page in doc:
        lines = []
        for block in page.get_text("dict")["blocks"]:
            for line in block.get("lines", []):
                lines.append(PdfLine(*line["bbox"], "".join(span["text"] for span in line["spans"])))
        lines.sort(key=lambda line: (round(line.y0), line.x0))
        pages.append(PdfPage(page.rect.height, lines))
    if not any(line.text.strip() for page in pages for line in page.lines):
        raise StageError(f"{pdf_path} has no text layer (scanned images?): OCR it first "
                         f"(e.g. `ocrmypdf in.pdf out.pdf`) or use a PDF with text")
    return pages
