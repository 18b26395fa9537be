"""Helpers shared by test folders (plain modules: conftest files are never imported as modules)."""
