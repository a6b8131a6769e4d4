#@ ImagePlus (label="Prediction (probability, mask or labels)") prediction
#@ ImagePlus (label="Ground truth (mask or labels)") ground_truth
#@ String (label="Thresholds", description="probability thresholds: a list 0.3,0.5 or START:STOP:STEP", value="0:1:0.1") thresholds
#@ Boolean (label="Watershed split before scoring", value=false) watershed
#@ Integer (label="Crop rows", value=0, min=0) crop_rows
#@ Boolean (label="Exclude border particles from size distributions", value=true) exclude_border

# Evaluate Segmentation... - particleseg, for Fiji's Python mode (Edit > Options > Python...).
# Score a segmentation against ground truth (ISBI metrics, instance IoU, F1, AP, size distributions) into the Evaluation table.
# Generated from particleseg.fiji.options by particleseg.fiji.scripting; do not edit by hand.
# Parameter names are the macro keys: run("Evaluate Segmentation...", "key=value ...").
try:
    from particleseg.fiji.scripting import run
except ImportError:  # Jython, or a Python without particleseg
    from ij import IJ
    IJ.error("Particle Segmentation", "Evaluate Segmentation... needs Fiji's Python mode with particleseg installed:\n"
             "Edit > Options > Python..., conda/pip dependencies from particleseg's environment.yml,\n"
             "'Launch in Python mode', restart Fiji. See docs/fiji.md.")
else:
    run('Evaluate Segmentation...', prediction=prediction, ground_truth=ground_truth, thresholds=thresholds, watershed=watershed, crop_rows=crop_rows, exclude_border=exclude_border)
