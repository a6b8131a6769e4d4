// Segment Folder: segment every image of a folder with Segment Particles... and save, per
// image, the particle table (CSV), the label image (TIFF) and the ROI set (ZIP).
//
// Headless, thousands of images (one ImageJ, one model load):
//   particleseg fiji run-macro Segment_Folder.ijm input=/data/sem output=/data/out model=default threshold=0.5
// From the menu (Plugins > Particle Segmentation > Examples > Segment Folder) it asks for the folders.
//
// Arguments (key=value, all optional): input, output, model, threshold, min_size, crop_rows.

args = getArgument();
input = call("ij.Macro.getValue", args, "input", "");
output = call("ij.Macro.getValue", args, "output", "");
model = call("ij.Macro.getValue", args, "model", "default");
threshold = call("ij.Macro.getValue", args, "threshold", "0.5");
crop = call("ij.Macro.getValue", args, "crop_rows", "auto");
minsize = call("ij.Macro.getValue", args, "min_size", "15");
if (input == "") input = getDirectory("Choose the folder of SEM images");
if (output == "") output = getDirectory("Choose the output folder");
if (!endsWith(input, File.separator)) input = input + File.separator;
if (!endsWith(output, File.separator)) output = output + File.separator;
File.makeDirectory(output);

options = "model=[" + model + "] threshold=" + threshold + " split seed_level=0.50 split_level=1 min_size=" + minsize
    + " fill_holes exclude_border crop_rows=" + crop + " labels clear add";

setBatchMode(true);
list = getFileList(input);
images = newArray(0);
for (i = 0; i < list.length; i++) {
    name = toLowerCase(list[i]);
    if (endsWith(name, ".tif") || endsWith(name, ".tiff") || endsWith(name, ".png") || endsWith(name, ".jpg"))
        images = Array.concat(images, list[i]);
}
total = 0;
for (i = 0; i < images.length; i++) {
    showProgress(i, images.length);
    open(input + images[i]);
    title = getTitle();
    dot = lastIndexOf(title, ".");
    stem = title;
    if (dot > 0) stem = substring(title, 0, dot);
    run("Segment Particles...", options);
    count = nResults;
    total = total + count;
    if (count > 0) saveAs("Results", output + stem + "_particles.csv");
    else File.saveString("", output + stem + "_particles.csv");  // no particles: an empty table
    if (roiManager("count") > 0) roiManager("save", output + stem + "_rois.zip");
    selectImage(stem + "_labels");
    saveAs("Tiff", output + stem + "_labels.tif");
    close("*");
    print("[" + (i + 1) + "/" + images.length + "] " + title + ": " + count + " particles");
}
print("Segment Folder: " + images.length + " images, " + total + " particles; results in " + output);
return "" + images.length + " " + total;
