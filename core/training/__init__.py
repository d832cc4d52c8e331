"""Training steps: the fold loop of stages 1 and 2 (engine), stage 0's within-task pre-training
(mlm), and their TensorBoard events (board, ``python -m core.training.board``)."""
