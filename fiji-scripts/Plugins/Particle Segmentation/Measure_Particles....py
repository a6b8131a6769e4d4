#@ ImagePlus imp
#@ ImagePlus (label="Intensity image", required=false) intensity
#@ Boolean (label="Clear results", value=true) clear
#@ Boolean (label="Add to ROI Manager", value=false) add
#@ Boolean (label="Histogram plot", value=false) histogram
#@ String (label="Histogram of", choices={"feret_min","feret_max","ecd","area"}, value="feret_min") histogram_of

# Measure Particles... - particleseg, for Fiji's Python mode (Edit > Options > Python...).
# Measure each particle of the active mask or label image in calibrated units (exact Feret diameters, ECD, shape, intensity) into the Results table.
# Generated from particleseg.fiji.options by particleseg.fiji.scripting; do not edit by hand.
# Parameter names are the macro keys: run("Measure Particles...", "key=value ...").
try:
    from particleseg.fiji.scripting import run
except ImportError:  # Jython, or a Python without particleseg
    from ij import IJ
    IJ.error("Particle Segmentation", "Measure Particles... needs Fiji's Python mode with particleseg installed:\n"
             "Edit > Options > Python..., conda/pip dependencies from particleseg's environment.yml,\n"
             "'Launch in Python mode', restart Fiji. See docs/fiji.md.")
else:
    run('Measure Particles...', imp=imp, intensity=intensity, clear=clear, add=add, histogram=histogram, histogram_of=histogram_of)
