"""The ClientApp a site runs: local DP-SGD (the only code that touches Opacus)."""
