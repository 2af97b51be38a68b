// Slice viewer of the mddose HTML report: each .viewer holds its pre-rendered frames (data: URIs) and
// labels as JSON; the range slider swaps the frame shown.
document.querySelectorAll('.viewer').forEach(function (v) {
  var data = JSON.parse(v.querySelector('script.frames').textContent);
  var img = v.querySelector('img.frame'), s = v.querySelector('input.slider'), lab = v.querySelector('.zlabel');
  function show() { var i = parseInt(s.value, 10); img.src = data.src[i]; lab.textContent = data.label[i]; }
  s.addEventListener('input', show); s.addEventListener('change', show); show();
});
