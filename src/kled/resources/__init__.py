"""Kled package."""
