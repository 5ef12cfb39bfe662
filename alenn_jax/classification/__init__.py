"""Stage 2b, classification with and without LE: what a classifier's steps close over
(`classifier_setup`), inference shared by the trainer and `predict` (`inference`), the trainer
(`train_classifier`) and the prediction job for new images (`predict`).
"""
