"""bandistill: offline knowledge distillation with Born-Again Neural Networks."""

__version__ = "0.1.0"
