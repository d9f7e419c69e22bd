"""Fakes of outside services for tests (scripted, offline)."""
