"""Calibration sets, reduced-precision graphs and the accuracy gate."""
