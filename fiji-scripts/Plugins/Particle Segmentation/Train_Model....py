#@ File (label="Images folder", style="directory") images
#@ File (label="Masks folder", description="label or mask images with the images' names", style="directory") masks
#@ File (label="Output bundle folder", style="directory") output
#@ String (label="Name of the model", value="my-model") name
#@ String (label="Base model (fine-tune; none: new network)", description="the model to fine-tune: default (the shipped default model), a bundle folder or name, or none to train a new network", value="default") base_model
#@ Integer (label="Minutes (time budget; 0: use epochs)", description="plan the epochs to finish in about this many minutes", value=0, min=0) minutes
#@ Integer (label="Epochs", value=20, min=1) epochs
#@ Integer (label="Tile (px)", value=256, min=32) tile
#@ String (label="Architecture (new network only)", choices={"multires_unet","unet","fcn"}, value="multires_unet") architecture
#@ Boolean (label="Wait until done (macros)", description="block until training ends; from the menu, training always runs in the background", value=false) wait

# Train Model... - particleseg, for Fiji's Python mode (Edit > Options > Python...).
# Train a segmentation network on image/mask pairs in the background, with progress in the status bar and the Log; the result is a model bundle.
# Generated from particleseg.fiji.options by particleseg.fiji.scripting; do not edit by hand.
# Parameter names are the macro keys: run("Train Model...", "key=value ...").
try:
    from particleseg.fiji.scripting import run
except ImportError:  # Jython, or a Python without particleseg
    from ij import IJ
    IJ.error("Particle Segmentation", "Train Model... needs Fiji's Python mode with particleseg installed:\n"
             "Edit > Options > Python..., conda/pip dependencies from particleseg's environment.yml,\n"
             "'Launch in Python mode', restart Fiji. See docs/fiji.md.")
else:
    run('Train Model...', images=images, masks=masks, output=output, name=name, base_model=base_model, minutes=minutes, epochs=epochs, tile=tile, architecture=architecture, wait=wait)
