"""Models: the architectures, the ``Classifier`` every loaded model becomes, its two file formats
(checkpoints, exported ONNX) and the zoo that turns a name or path into one."""
