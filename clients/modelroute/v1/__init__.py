"""Generated from protos/modelroute/v1; do not edit."""
