"""Invoice documents as HTML (Jinja2) and PDF (ReportLab), from the API's JSON.

Pure rendering: `documents.view` decides every string, `documents.html` and
`documents.pdf` lay it out. Depends on ``models`` only; used by the API and
the CLI.
"""
