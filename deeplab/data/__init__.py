"""Datasets: archive catalogue (sources), download (fetch), safe extraction (extract), conversion to
prepared folders (prepare) and synthetic archives in the official formats (synthetic)."""
