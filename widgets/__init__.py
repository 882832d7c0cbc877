"""Front-end assets (ES modules and CSS) of the labeling widgets; see README.md here."""
