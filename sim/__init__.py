"""Simulators and the demo: what stands in for the factory around the production packages.

- ``line`` — a simulated production line that sends frames as parts to a running server and
  scores its decisions against ground truth (escapes, overkills, latency);
- ``plc``  — a simulated PLC that acknowledges a station's Modbus results
  (``python -m sim.plc --port 5020``);
- ``demo`` — ``inspection demo``: dataset -> training -> promotion -> serving -> simulated line.

This package sits above ``inspection``, ``training`` and ``serving`` and may use all three;
none of them imports it (tests/test_import_boundary.py).
"""
