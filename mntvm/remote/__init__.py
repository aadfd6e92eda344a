"""Boards over TVM's RPC: tracker, server, sessions, and an emulated aarch64 board."""
