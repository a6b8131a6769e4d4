#@ File (label="Input folder", style="directory") input
#@ File (label="Output folder", style="directory") output
#@ String (label="Model", description="installed model bundle, or in a macro the path of a bundle folder or zip", value="default") model
#@ Double (label="Threshold", description="foreground probability threshold", value=0.5, min=0, max=1, style="format:0.00") threshold
#@ Boolean (label="Split touching particles", description="split touching particles (watershed)", value=true) split
#@ Boolean (label="Exclude border particles", description="reject particles touching the image border or the data bar", value=true) exclude_border
#@ Double (label="Seed level", description="watershed seed level on the network's distance map (higher splits more)", value=0.1, min=0, max=1, style="format:0.00") seed_level
#@ Double (label="Seed depth", description="watershed seeds are the peaks of the network's distance map rising this far above their saddle, above the seed level (0: every region above the seed level; lower splits more)", value=0.15, min=0, max=1, style="format:0.00") seed_depth
#@ Double (label="Merge level", description="after the watershed, touching particles whose shared border has at least this mean foreground probability become one (0: never; lower merges more)", value=0, min=0, max=1, style="format:0.00") merge_level
#@ Double (label="Split level (px)", description="h-maxima depth of the distance-transform watershed, without a distance head (lower splits more)", value=1, min=0, style="format:0.00") split_level
#@ Integer (label="Min size (px)", description="remove particles of fewer pixels (noise)", value=15, min=0) min_size
#@ Double (label="Min confidence", description="remove particles whose mean foreground probability is below this (0 keeps all)", value=0.9, min=0, max=1, style="format:0.00") min_confidence
#@ Boolean (label="Fill holes", description="fill holes inside particles", value=true) fill_holes
#@ Boolean (label="Augment", description="average the network's output over the 8 flips and rotations of the image (test-time augmentation): smoother outlines, fewer spurious particles, 8x the network time", value=false) augment
#@ Double (label="Min score (classifier)", description="keep particles whose particle-classifier score reaches this (bundles with a classifier; 0 keeps all)", value=0, min=0, max=1, style="format:0.00") min_score
#@ String (label="Intensity filter", description="reject particles whose mean gray value is on the background side of this global threshold", choices={"none","li","otsu","mean","median"}, value="none") intensity_filter
#@ String (label="Polarity", description="particles brighter (SEM) or darker (TEM bright field) than the background; auto: estimated per image", choices={"auto","bright","dark"}, value="auto") polarity
#@ String (label="Area (calibrated unit²)", description="keep particles whose area is in MIN-MAX", value="0-Infinity") area
#@ String (label="ECD (calibrated unit)", description="keep particles whose equivalent circular diameter is in MIN-MAX", value="0-Infinity") ecd
#@ String (label="Feret min (calibrated unit)", description="keep particles whose minimum Feret diameter is in MIN-MAX", value="0-Infinity") feret_min
#@ String (label="Feret max (calibrated unit)", description="keep particles whose maximum Feret diameter is in MIN-MAX", value="0-Infinity") feret_max
#@ String (label="Circularity", description="keep particles whose circularity (4 pi area / perimeter², 0-1) is in MIN-MAX", value="0-1") circularity
#@ String (label="Solidity", description="keep particles whose solidity (area / convex area, 0-1) is in MIN-MAX", value="0-1") solidity
#@ String (label="Aspect ratio", description="keep particles whose aspect ratio (major / minor axis) is in MIN-MAX", value="0-Infinity") aspect_ratio
#@ String (label="Crop rows (auto or N)", description="rows of the microscope's data bar at the bottom to ignore (auto detects them, 0 keeps all)", value="auto") crop_rows
#@ Boolean (label="Annotations", description="find burned-in scale bars, their labels and panel letters: paint them over for the network and reject particles lying on them", value=true) annotations
#@ Double (label="Particle size (px)", description="typical particle diameter in this image, in pixels; the image is resampled to the model's training scale (0: estimated per image)", value=0, min=0, style="format:0.00") particle_size
#@ Double (label="Rescale", description="resample the image by this factor before inference instead of the estimated scale (1: as it is; 0: estimated)", value=0, min=0, style="format:0.00") rescale
#@ String (label="Engine", description="what runs the network: auto (ONNX Runtime when the model has an ONNX export and onnxruntime is installed, else Keras), onnx or keras", choices={"auto","onnx","keras"}, value="auto") engine
#@ Boolean (label="Strict", description="calibration metadata that cannot be used (zero or infinite pixel size, unknown unit) is an error naming the file and the tag, instead of a note and measuring without it", value=false) strict
#@ Boolean (label="Overwrite existing outputs", value=false) overwrite
#@ Boolean (label="Overview figures", value=true) overview

# Batch Segment Folder... - particleseg, for Fiji's Python mode (Edit > Options > Python...).
# Segment every image of a folder and write the labels, mask, probability, ROI set, particle table and overview of each, and summary.csv (as `particleseg segment`).
# Generated from particleseg.fiji.options by particleseg.fiji.scripting; do not edit by hand.
# Parameter names are the macro keys: run("Batch Segment Folder...", "key=value ...").
try:
    from particleseg.fiji.scripting import run
except ImportError:  # Jython, or a Python without particleseg
    from ij import IJ
    IJ.error("Particle Segmentation", "Batch Segment Folder... needs Fiji's Python mode with particleseg installed:\n"
             "Edit > Options > Python..., conda/pip dependencies from particleseg's environment.yml,\n"
             "'Launch in Python mode', restart Fiji. See docs/fiji.md.")
else:
    run('Batch Segment Folder...', input=input, output=output, model=model, threshold=threshold, split=split, exclude_border=exclude_border, seed_level=seed_level, seed_depth=seed_depth, merge_level=merge_level, split_level=split_level, min_size=min_size, min_confidence=min_confidence, fill_holes=fill_holes, augment=augment, min_score=min_score, intensity_filter=intensity_filter, polarity=polarity, area=area, ecd=ecd, feret_min=feret_min, feret_max=feret_max, circularity=circularity, solidity=solidity, aspect_ratio=aspect_ratio, crop_rows=crop_rows, annotations=annotations, particle_size=particle_size, rescale=rescale, engine=engine, strict=strict, overwrite=overwrite, overview=overview)
