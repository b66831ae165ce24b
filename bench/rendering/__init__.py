"""Stored runs made readable: tables, figures, the context lines and the HTML report."""
