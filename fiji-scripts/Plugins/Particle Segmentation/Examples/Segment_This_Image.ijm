// Segment This Image: segment the active image and save its particle table, label image and
// ROI set. Made for per-image batch runs, where particleseg opens each image of a folder:
//   particleseg fiji run-macro Segment_This_Image.ijm --input /data/sem --output /data/out model=default
// From the menu it works on the active image and asks for the output folder.
//
// Arguments (key=value): output, model, threshold, min_size, crop_rows (input and name are set by run-macro).

args = getArgument();
output = call("ij.Macro.getValue", args, "output", "");
model = call("ij.Macro.getValue", args, "model", "default");
threshold = call("ij.Macro.getValue", args, "threshold", "0.5");
crop = call("ij.Macro.getValue", args, "crop_rows", "auto");
minsize = call("ij.Macro.getValue", args, "min_size", "15");
if (output == "") output = getDirectory("Choose the output folder");
if (!endsWith(output, File.separator)) output = output + File.separator;

title = getTitle();
dot = lastIndexOf(title, ".");
stem = title;
if (dot > 0) stem = substring(title, 0, dot);
run("Segment Particles...", "model=[" + model + "] threshold=" + threshold + " split seed_level=0.50 split_level=1"
    + " min_size=" + minsize + " fill_holes exclude_border crop_rows=" + crop + " labels clear add");
count = nResults;
if (count > 0) saveAs("Results", output + stem + "_particles.csv");
else File.saveString("", output + stem + "_particles.csv");  // no particles: an empty table
if (roiManager("count") > 0) roiManager("save", output + stem + "_rois.zip");
selectImage(stem + "_labels");
saveAs("Tiff", output + stem + "_labels.tif");
return "" + count;
