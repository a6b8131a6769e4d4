#@ ImagePlus imp
#@ ImagePlus (label="Distance map", description="a map that is high in particle centres (the probability or distance output); none: the Euclidean distance transform of the mask", required=false) distance
#@ Double (label="Seed level", description="watershed seed level on the network's distance map (higher splits more)", value=0.5, min=0, max=1, style="format:0.00") seed_level
#@ Double (label="Seed depth", description="watershed seeds are the peaks of the network's distance map rising this far above their saddle, above the seed level (0: every region above the seed level; lower splits more)", value=0, min=0, max=1, style="format:0.00") seed_depth
#@ Double (label="Split level (px)", description="h-maxima depth of the distance-transform watershed, without a distance head (lower splits more)", value=1, min=0, style="format:0.00") split_level
#@ Integer (label="Min size (px)", description="remove particles of fewer pixels (noise)", value=0, min=0) min_size
#@ Boolean (label="Mask image (with separating lines)", value=false) mask
#@ Boolean (label="Add to ROI Manager", value=false) add

# Split Touching Particles... - particleseg, for Fiji's Python mode (Edit > Options > Python...).
# Separate touching particles of the active mask or label image by a marker-controlled watershed.
# Generated from particleseg.fiji.options by particleseg.fiji.scripting; do not edit by hand.
# Parameter names are the macro keys: run("Split Touching Particles...", "key=value ...").
try:
    from particleseg.fiji.scripting import run
except ImportError:  # Jython, or a Python without particleseg
    from ij import IJ
    IJ.error("Particle Segmentation", "Split Touching Particles... needs Fiji's Python mode with particleseg installed:\n"
             "Edit > Options > Python..., conda/pip dependencies from particleseg's environment.yml,\n"
             "'Launch in Python mode', restart Fiji. See docs/fiji.md.")
else:
    run('Split Touching Particles...', imp=imp, distance=distance, seed_level=seed_level, seed_depth=seed_depth, split_level=split_level, min_size=min_size, mask=mask, add=add)
