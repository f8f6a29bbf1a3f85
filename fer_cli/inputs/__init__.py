"""Inputs: image files and labelled data sets, faces found in photos, training batches.

Imports nothing on purpose (so do the other stages' ``__init__``): importing one module of a
stage never pulls in the rest, nor torch (``fer predict --model fast`` runs without it).
"""
