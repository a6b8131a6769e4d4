

# Models... - particleseg, for Fiji's Python mode (Edit > Options > Python...).
# List the installed model bundles in the Models table.
# Generated from particleseg.fiji.options by particleseg.fiji.scripting; do not edit by hand.
# Parameter names are the macro keys: run("Models...", "key=value ...").
try:
    from particleseg.fiji.scripting import run
except ImportError:  # Jython, or a Python without particleseg
    from ij import IJ
    IJ.error("Particle Segmentation", "Models... needs Fiji's Python mode with particleseg installed:\n"
             "Edit > Options > Python..., conda/pip dependencies from particleseg's environment.yml,\n"
             "'Launch in Python mode', restart Fiji. See docs/fiji.md.")
else:
    run('Models...')
