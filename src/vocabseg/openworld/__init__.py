"""Open-world semantic segmentation (seed 003): ContMAV and its variants, in one place.

Everything of this family lives here, and nothing here imports the FC-CLIP family
(``vocabseg.models``, ``vocabseg.approaches``, ``vocabseg.losses``, ``vocabseg.pretrain``,
``vocabseg.data.panoptic_dataset``, ``vocabseg.train``) nor the reverse
(``tests/test_layout.py`` checks it). The step order of a study::

    dataset.py     Cityscapes-layout train-id labels, known/unknown label spaces, augmentation
    model/         the network: ResNet34 NonBottleneck-1D encoder, decoders, TruFor-style head
    losses.py      L_sem (CE / focal / dice), L_feat, L_cont, objectosphere, InfoNCE, SynCo
    train.py       the training task of every variant on the shared trainer, class weights, export
    inference.py   unknown score, unknown mask, most similar class, discovery of new classes
    evaluate.py    an exported model on a labelled split -> the open-world metrics JSON
    metrics.py     known mIoU, AUPR / AUROC / FPR95, open-world mIoU, class similarity

Shared with the FC-CLIP family: ``vocabseg.data`` (labels, layout, augmentations),
``vocabseg.engine`` (the one training loop), ``vocabseg.evaluation.semantic`` (IoU),
``vocabseg.fileio`` and ``vocabseg.errors``. The command line (``vocabseg contmav-*``)
and the report read this package; the workflow rules are in
``workflow/rules/openworld.smk``.
"""
