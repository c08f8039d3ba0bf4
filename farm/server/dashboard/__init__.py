"""The farm dashboard's static page (index.html, dashboard.js), shipped as package data."""
