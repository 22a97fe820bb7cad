"""Line integration: PLC result handshake over Modbus TCP and OPC UA, decision events over MQTT.

See docs/plc.md for the register map, node tree and handshake a PLC programmer wires against.
Everything here is started and stopped by ``serving.line.integration`` from the app's lifespan.
"""
