"""Reconstruction engine: numpy and torch only, never bpy."""
