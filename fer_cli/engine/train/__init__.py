"""`fer train`: one training loop, validation every epoch, best checkpoint kept, resumable.

    fer train ../shared/data/fer2013/train --val ../shared/data/fer2013/val --arch vgg --epochs 30 --out weights/vgg.pt

Beside ``--out`` it writes ``NAME.history.csv`` (one row per epoch), ``NAME.curves.png`` (the
history as curves, redrawn every epoch) and ``NAME.last.pt`` (everything ``--resume`` needs to
continue an interrupted run where it stopped). ``--tensorboard DIR`` logs the epochs there too.

One module per job, each imported by name (this file imports nothing, as every stage package's):

- ``run``: ``train(config)``, a whole run: checks, set-up, the epochs, the finish
- ``config``: ``TrainConfig``, its option checks and defaults
- ``set_up``: ``TrainingRun`` (what a run holds between epochs) and how a run is set up
- ``epoch``: one epoch: batches, ``train_one_epoch``, validation (``predict_tensors``), the history row
- ``data``: the training and validation data in memory, and the targets the loss learns (labels or votes)
- ``optimisation``: optimiser, schedule, loss, MixUp/CutMix
- ``fine_tuning``: starting from a trained model (``--init``)
- ``resume``: the resume state (NAME.last.pt) and ``--resume``
- ``provenance``: what a checkpoint records of how it was made
- ``run_files``: the files beside ``--out``, their names, the history CSV
- ``curves``: NAME.curves.png, redrawn every epoch
"""
