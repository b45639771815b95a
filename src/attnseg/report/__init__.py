"""Reports: terminal/Markdown tables, figures and HTML pages."""
